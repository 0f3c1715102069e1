"""A model provider for any OpenAI-compatible chat-completions endpoint.

This module owns :class:`OpenAICompatProvider` (request encoding, reply decoding, streaming, and
the OpenAI Batch API) and :class:`ModelStream` (incremental text of a streamed reply). HTTP,
retries with backoff honouring ``Retry-After``, and the translation of failures into
:mod:`avm.errors` are :class:`avm.llm.io.transport.ModelTransport`'s, shared with the other HTTP
providers:

==============================================  ==============================================
what happened                                   what the caller gets
==============================================  ==============================================
429 until retries ran out                       :class:`~avm.errors.RateLimited`
no answer within ``timeout_s``                  :class:`~avm.errors.ModelTimeout`
5xx, connection refused or dropped              :class:`~avm.errors.ProviderUnavailable`
any other 4xx, malformed or unexpected reply    :class:`~avm.errors.ModelError`
==============================================  ==============================================

Nothing from the HTTP layer or msgspec escapes, and the API key never appears in an error
message: the server's own words are quoted (trimmed), with any echo of the key masked.

The per-call path is kept lean because the VM issues thousands of calls per second: the request
head is built once, the shared prefix of a request (system prompt and tools) is spliced in as
bytes encoded once (:mod:`avm.llm.io.prefix`), the rest is encoded straight from msgspec
structs, and replies are decoded into typed structs without an intermediate dict.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Final

import msgspec

from avm.errors import ModelError, ProviderUnavailable, RateLimited
from avm.llm.io.prefix import PREFIXES, SharedPrefix
from avm.llm.io.streams import ReplyStream
from avm.llm.io.transport import ModelTransport, batch_custom_id
from avm.llm.types import Message, ModelReply, ModelRequest, ToolCall, ToolSpec, Usage

__all__ = ["ModelStream", "OpenAICompatProvider"]

logger = logging.getLogger(__name__)

# Batch states after which polling stops.
_BATCH_FINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})
# OpenAI's limits for one batch input file.
MAX_BATCH_REQUESTS: Final = 50_000


# --- request wire format ---------------------------------------------------------------------


class _WireFunctionCall(msgspec.Struct):
    name: str
    arguments: str


class _WireToolCall(msgspec.Struct):
    id: str
    function: _WireFunctionCall
    type: str = "function"


class _WireMessage(msgspec.Struct, omit_defaults=True):
    """A message that :class:`Message` cannot encode as itself (see ``_wire_message``)."""

    role: str
    content: str | None
    tool_calls: list[_WireToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class _WireTool(msgspec.Struct):
    function: ToolSpec
    type: str = "function"


class _StreamOptions(msgspec.Struct):
    include_usage: bool = True


class _WireRequest(msgspec.Struct, omit_defaults=True):
    model: str
    # Message | _WireMessage | msgspec.Raw (a shared system message encoded once, see prefix)
    messages: list[Any]
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str] | None = None
    # list[_WireTool], or the shared prefix's tools already encoded as msgspec.Raw
    tools: list[_WireTool] | msgspec.Raw | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None


class _BatchLine(msgspec.Struct):
    """One line of an OpenAI Batch input file."""

    custom_id: str
    body: msgspec.Raw
    method: str = "POST"
    url: str = "/v1/chat/completions"


def _wire_message(message: Message) -> Message | _WireMessage:
    # A Message without tool calls already has the wire shape, so it is encoded as is: no copy
    # for the common case. Tool calls need OpenAI's nested {"function": {...}} form, and an empty
    # content would be dropped by Message's omit_defaults, which OpenAI rejects for most roles.
    if message.tool_calls:
        return _WireMessage(
            role=message.role,
            content=message.content or None,
            tool_calls=[
                _WireToolCall(id=c.id, function=_WireFunctionCall(c.name, c.arguments))
                for c in message.tool_calls
            ],
            tool_call_id=message.tool_call_id,
            name=message.name,
        )
    if not message.content:
        return _WireMessage(
            role=message.role,
            content="",
            tool_call_id=message.tool_call_id,
            name=message.name,
        )
    return message


# --- reply wire format -----------------------------------------------------------------------


class _RFunction(msgspec.Struct):
    name: str = ""
    arguments: str = ""


class _RToolCall(msgspec.Struct):
    function: _RFunction
    id: str = ""


class _RMessage(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_RToolCall] | None = None


class _RChoice(msgspec.Struct):
    message: _RMessage
    finish_reason: str | None = None


class _RPromptDetails(msgspec.Struct):
    cached_tokens: int | None = 0


class _RUsage(msgspec.Struct):
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    prompt_tokens_details: _RPromptDetails | None = None


class _RCompletion(msgspec.Struct):
    choices: list[_RChoice]
    model: str | None = None
    usage: _RUsage | None = None


class _RFunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _RToolCallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _RFunctionDelta | None = None


class _RDelta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_RToolCallDelta] | None = None


class _RChunkChoice(msgspec.Struct):
    delta: _RDelta | None = None
    finish_reason: str | None = None


class _RChunk(msgspec.Struct):
    choices: list[_RChunkChoice] = []
    model: str | None = None
    usage: _RUsage | None = None


class _RErrorDetail(msgspec.Struct):
    message: str | None = None


class _RErrorBody(msgspec.Struct):
    error: _RErrorDetail | str


# --- Batch API wire format -------------------------------------------------------------------


class _RFile(msgspec.Struct):
    id: str


class _RBatchError(msgspec.Struct):
    message: str | None = None
    code: str | None = None
    line: int | None = None


class _RBatchErrors(msgspec.Struct):
    data: list[_RBatchError] = []


class _RBatch(msgspec.Struct):
    id: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: _RBatchErrors | None = None


_NO_BODY: Final = msgspec.Raw(b"")


class _ROutResponse(msgspec.Struct):
    status_code: int = 0
    body: msgspec.Raw = _NO_BODY  # the reply, decoded later by the live-call decoder


class _ROutError(msgspec.Struct):
    message: str | None = None
    code: str | None = None


class _ROutLine(msgspec.Struct):
    custom_id: str
    response: _ROutResponse | None = None
    error: _ROutError | None = None


class _BatchCreate(msgspec.Struct):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


_ENCODER: Final = msgspec.json.Encoder()
_COMPLETION_DECODER: Final = msgspec.json.Decoder(_RCompletion)
_CHUNK_DECODER: Final = msgspec.json.Decoder(_RChunk)
_FILE_DECODER: Final = msgspec.json.Decoder(_RFile)
_BATCH_DECODER: Final = msgspec.json.Decoder(_RBatch)
_OUT_LINE_DECODER: Final = msgspec.json.Decoder(_ROutLine)
_ERROR_BODY_DECODER: Final = msgspec.json.Decoder(_RErrorBody)


def _usage(wire: _RUsage | None) -> Usage:
    if wire is None:
        return Usage()
    details = wire.prompt_tokens_details
    return Usage(
        tokens_in=wire.prompt_tokens or 0,
        tokens_out=wire.completion_tokens or 0,
        cached_tokens=(details.cached_tokens or 0) if details is not None else 0,
    )


def _lay_out(request: ModelRequest, prefix: SharedPrefix | None, *, stream: bool) -> _WireRequest:
    """The wire form of ``request``; ``prefix`` is its shared prefix, encoded once for all."""
    tools: list[_WireTool] | msgspec.Raw | None = None
    if prefix is None:
        messages: list[Any] = [_wire_message(m) for m in request.messages]
    else:
        shared, tools = prefix.encoded("openai", _encode_prefix)
        messages = shared + [_wire_message(m) for m in request.messages[prefix.count :]]
    return _WireRequest(
        model=request.model,
        messages=messages,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=list(request.stop) if request.stop else None,
        tools=tools,
        stream=stream,
        stream_options=_StreamOptions() if stream else None,
    )


class _Body(msgspec.Struct, frozen=True, gc=False):
    """A request's body as an :data:`avm.llm.io.http.BodyWriter`: laid out and encoded when
    called. Not a ``functools.partial``: that and its argument tuple would be two more objects
    for the cycle collector to walk for every call queued for a connection; this is none (it
    holds a request and a prefix, neither of which refers back to it)."""

    request: ModelRequest
    prefix: SharedPrefix | None

    def __call__(self, buffer: bytearray, offset: int) -> None:
        _ENCODER.encode_into(_lay_out(self.request, self.prefix, stream=False), buffer, offset)


def _encode_prefix(prefix: SharedPrefix) -> tuple[list[msgspec.Raw], msgspec.Raw | None]:
    """The shared prefix in OpenAI's shape: system messages and the tools array, as bytes."""
    messages = [
        msgspec.Raw(_ENCODER.encode(_wire_message(Message(role="system", content=text))))
        for text in prefix.texts
    ]
    tools = None
    if prefix.tools:
        tools = msgspec.Raw(_ENCODER.encode([_WireTool(function=t) for t in prefix.tools]))
    return messages, tools


class OpenAICompatProvider:
    """Answers :class:`ModelRequest` through an OpenAI-compatible ``/chat/completions`` API.

    Args:
        base_url: the API root, e.g. ``https://api.openai.com/v1`` or a fake server's
            ``base_url``; ``/chat/completions`` is appended.
        api_key: sent as ``Authorization: Bearer``; never logged or put in an error.
        timeout_s: limit for one attempt: the whole call for :meth:`complete`; connecting and
            each gap between streamed chunks for :meth:`stream`.
        max_connections: size of the connection pool (concurrent requests beyond it queue).
        max_retries: extra attempts after a 429, 500, 502, 503, 504 or connection error.
        backoff_base_s: first retry delay; it doubles per retry, with jitter, unless the server
            sent ``Retry-After``, which is honoured instead.
        backoff_max_s: longest single wait. A ``Retry-After`` longer than this is not waited
            out here: the call fails with :class:`RateLimited` carrying ``retry_after_s``, so a
            scheduler can park the agent instead of holding a connection slot.
        retry_on_timeout: also retry after a timeout. Off by default: the server may still be
            working on (and billing) the first attempt, and retries multiply the worst-case wait.
        headers: extra headers for every request (e.g. an organisation id).

    Connections are opened on first use inside the running event loop; :meth:`aclose` closes
    them.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_connections: int = 256,
        max_retries: int = 2,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        retry_on_timeout: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._transport = ModelTransport(
            self.base_url,
            timeout_s=timeout_s,
            max_connections=max_connections,
            max_retries=max_retries,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            retry_on_timeout=retry_on_timeout,
            secret=api_key,
            name=repr(self),
        )
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.max_retries = max_retries
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if headers:
            self._headers.update(headers)
        self.set_api_key(api_key)
        self._where = "POST " + self._transport.url("/chat/completions")
        self._batch_ids = itertools.count(1)

    def __repr__(self) -> str:
        # Deliberately without the key.
        return f"OpenAICompatProvider({self.base_url!r})"

    def set_api_key(self, api_key: str | None) -> None:
        """Authenticate with ``api_key`` from the next request on (None: send no key)."""
        self._api_key = api_key or None
        if self._api_key is None:
            self._headers.pop("Authorization", None)
        else:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
            self._transport.add_secret(self._api_key)
        self._chat_head = self._transport.head("POST", "/chat/completions", self._headers)

    # --- public API --------------------------------------------------------------------------

    async def complete(self, request: ModelRequest) -> ModelReply:
        """Answer one request; raises only :class:`avm.errors.ModelError` subclasses."""
        # The body is laid out and encoded by the connection pool once a connection is free,
        # straight into its send buffer (see avm.llm.io.http.BodyWriter): a call queued for a
        # connection holds no wire form of itself, only the request and its shared prefix
        # (found now, while the wrappers' lookup of this very request is remembered).
        writer = _Body(request, PREFIXES.of(request))
        response = await self._transport.call(
            self._chat_head, writer, where=self._where, model=request.model
        )
        return self._decode(response.body, request.model)

    def stream(self, request: ModelRequest) -> ModelStream:
        """Stream one request's reply as text deltas.

        ``async for delta in provider.stream(request)`` yields the text as it arrives; once the
        iteration ends, the returned stream's :attr:`ModelStream.reply` holds the complete
        :class:`ModelReply` (text, tool calls, usage, finish reason). Use ``async with`` around
        it when the loop may stop early, so the connection is released at once. Retries apply
        only until the reply starts; a failure mid-stream is raised as is.
        """
        return ModelStream(self, request)

    async def run_batch(
        self,
        requests: Sequence[ModelRequest],
        *,
        poll_s: float = 30.0,
        completion_window: str = "24h",
    ) -> list[ModelReply | ModelError]:
        """Answer ``requests`` through the OpenAI Batch API, in order.

        Uploads the requests as a JSONL file, creates a batch, polls it every ``poll_s``
        seconds until it is over, downloads the output (and error) files, and returns one reply
        or one :class:`ModelError` per request. A request the batch did not answer (it failed
        validation, expired or was cancelled) gets a :class:`ModelError` saying so. Raises only
        when the batch could not be submitted or polled at all.
        """
        if not requests:
            return []
        if len(requests) > MAX_BATCH_REQUESTS:
            raise ValueError(f"a batch holds at most {MAX_BATCH_REQUESTS} requests")
        serial = next(self._batch_ids)
        endpoint = self._transport.base_path + "/chat/completions"
        lines = [
            _ENCODER.encode(
                _BatchLine(
                    custom_id=batch_custom_id(i), body=msgspec.Raw(self.encode(r)), url=endpoint
                )
            )
            for i, r in enumerate(requests)
        ]
        model = requests[0].model
        file_id = await self._upload(b"\n".join(lines) + b"\n", f"avm-batch-{serial}.jsonl", model)
        create = _BatchCreate(
            input_file_id=file_id,
            endpoint=endpoint,
            completion_window=completion_window,
            metadata={"source": "avm"},
        )
        transport = self._transport
        call = functools.partial(
            transport.call_json, headers=self._headers, model=model, decoder=_BATCH_DECODER
        )
        batch = await call("POST", "/batches", _ENCODER.encode(create))
        logger.debug("%s: batch %s of %d requests created", self.base_url, batch.id, len(requests))
        while batch.status not in _BATCH_FINAL:
            await asyncio.sleep(poll_s)
            batch = await call("GET", f"/batches/{batch.id}", b"")
        results: dict[int, ModelReply | ModelError] = {}
        for file in (batch.output_file_id, batch.error_file_id):
            if file:
                content = await self._download(file, model)
                results.update(
                    transport.read_batch_results(content, _OUT_LINE_DECODER, requests, self._answer)
                )
        why = batch.status
        if batch.errors is not None and batch.errors.data:
            why += ": " + "; ".join(transport.mask(e.message or "") for e in batch.errors.data[:3])
        return transport.batch_replies(
            requests, results, batch_id=batch.id, missing=f"no result, the batch {why}"
        )

    async def aclose(self) -> None:
        """Close the connection pool; the provider cannot be used afterwards."""
        await self._transport.aclose()

    # --- batch helpers -----------------------------------------------------------------------

    async def _upload(self, content: bytes, filename: str, model: str) -> str:
        boundary = f"avm-{next(self._batch_ids):08x}-boundary"
        form = (
            (
                f"--{boundary}\r\n"
                'Content-Disposition: form-data; name="purpose"\r\n\r\n'
                "batch\r\n"
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                "Content-Type: application/jsonl\r\n\r\n"
            ).encode()
            + content
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = dict(self._headers)
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        head = self._transport.head("POST", "/files", headers)
        where = "POST " + self._transport.url("/files")
        response = await self._transport.call(head, form, where=where, model=model)
        return self._transport.decode(_FILE_DECODER, response.body, where=where, model=model).id

    async def _download(self, file_id: str, model: str) -> bytes:
        path = f"/files/{file_id}/content"
        head = self._transport.head("GET", path, self._headers)
        where = "GET " + self._transport.url(path)
        response = await self._transport.call(head, b"", where=where, model=model, max_body=1 << 30)
        return response.body

    def _answer(self, line: _ROutLine, model: str) -> ModelReply:
        """The reply one line of a batch's output (or error) file holds, or the error it tells."""
        response = line.response
        if response is not None and response.status_code == 200 and len(response.body):
            return self._decode(bytes(response.body), model)
        status = response.status_code if response is not None else 0
        detail = ""
        if response is not None and len(response.body):
            detail = self._error_detail(bytes(response.body))
        if not detail and line.error is not None:
            detail = self._transport.mask(line.error.message or line.error.code or "")
        where = f"batch request {line.custom_id}"
        message = self._transport.describe(where, model, f"HTTP {status}: {detail or 'failed'}")
        if status == 429:
            raise RateLimited(message)
        if status >= 500:
            raise ProviderUnavailable(message)
        raise ModelError(message)

    def _error_detail(self, raw: bytes) -> str:
        try:
            parsed = _ERROR_BODY_DECODER.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return self._transport.quote(raw)
        error = parsed.error
        return self._transport.mask(error if isinstance(error, str) else (error.message or ""))

    # --- encoding ----------------------------------------------------------------------------

    def encode(self, request: ModelRequest, *, stream: bool = False) -> bytes:
        """The JSON body of ``request`` for ``/chat/completions``."""
        return _ENCODER.encode(self._wire(request, stream=stream))

    def _wire(self, request: ModelRequest, *, stream: bool) -> _WireRequest:
        return _lay_out(request, PREFIXES.of(request), stream=stream)

    def _decode(self, payload: bytes, model: str) -> ModelReply:
        completion = self._transport.decode(
            _COMPLETION_DECODER, payload, where=self._where, model=model
        )
        if not completion.choices:
            raise ModelError(
                self._transport.describe(
                    self._where, model, f"reply has no choices: {self._transport.quote(payload)}"
                )
            )
        choice = completion.choices[0]
        message = choice.message
        calls: tuple[ToolCall, ...] = ()
        if message.tool_calls:
            calls = tuple(
                ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
                for c in message.tool_calls
            )
        return ModelReply(
            text=message.content or "",
            model=completion.model or model,
            usage=_usage(completion.usage),
            tool_calls=calls,
            finish_reason=choice.finish_reason or "stop",
        )


class ModelStream(ReplyStream):
    """The text deltas of one streamed reply, then the whole reply in :attr:`reply`.

    Iterate it once. Errors are translated exactly as for
    :meth:`OpenAICompatProvider.complete`.
    """

    def __init__(self, provider: OpenAICompatProvider, request: ModelRequest) -> None:
        super().__init__()
        self._provider = provider
        self._request = request

    async def _run(self) -> AsyncGenerator[str, None]:
        provider = self._provider
        transport = provider._transport
        where = provider._where
        model = self._request.model
        writer = functools.partial(_ENCODER.encode_into, provider._wire(self._request, stream=True))
        stream = await transport.open_stream(provider._chat_head, writer, where=where, model=model)
        text: list[str] = []
        calls: dict[int, list[str]] = {}  # index -> [id, name, arguments...]
        usage = Usage()
        finish: str | None = None
        reply_model = model
        done = False
        with transport.reading(stream, where=where, model=model):
            async for line in stream.lines():
                if not line.startswith(b"data:"):
                    continue  # blank separators, ": keep-alive" comments, "event:" lines
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                chunk = transport.decode(
                    _CHUNK_DECODER, data, where=where, model=model, what="stream chunk"
                )
                if chunk.model:
                    reply_model = chunk.model
                if chunk.usage is not None:
                    usage = _usage(chunk.usage)
                for choice in chunk.choices:
                    if choice.finish_reason:
                        finish = choice.finish_reason
                    delta = choice.delta
                    if delta is None:
                        continue
                    for call in delta.tool_calls or ():
                        parts = calls.setdefault(call.index, ["", ""])
                        if call.id:
                            parts[0] = call.id
                        if call.function is not None:
                            if call.function.name:
                                parts[1] = call.function.name
                            if call.function.arguments:
                                parts.append(call.function.arguments)
                    if delta.content:
                        text.append(delta.content)
                        yield delta.content
            if done:
                # Read to the end of the body so the connection can be reused.
                await stream.read()
        if not done and finish is None:
            raise ProviderUnavailable(
                transport.describe(where, model, "stream ended before completion")
            )
        self.reply = ModelReply(
            text="".join(text),
            model=reply_model,
            usage=usage,
            tool_calls=tuple(
                ToolCall(id=parts[0], name=parts[1], arguments="".join(parts[2:]))
                for _, parts in sorted(calls.items())
            ),
            finish_reason=finish or "stop",
        )
