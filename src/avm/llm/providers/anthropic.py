"""A model provider for Anthropic's Messages API.

This module owns :class:`AnthropicProvider` (request encoding into the Messages shape, reply
decoding, streaming over server-sent events, Message Batches) and :func:`anthropic_factory`
(building one from a :class:`~avm.config.ModelConfig`). HTTP, retries honouring
``Retry-After`` and the translation of failures into :mod:`avm.errors` are
:class:`~avm.llm.io.transport.ModelTransport`'s, shared with the OpenAI-compatible provider;
Anthropic's 529 "overloaded" is retried and reported like any 5xx.

How AVM's chat messages map onto the Messages API:

==================================  ==========================================================
AVM                                 Anthropic
==================================  ==========================================================
``system`` messages                 the top-level ``system`` blocks, in order
``user`` message                    ``user`` turn
``assistant`` message, tool calls   ``assistant`` turn with ``text`` and ``tool_use`` blocks
``tool`` messages                   ``tool_result`` blocks in a ``user`` turn (consecutive
                                    results share one turn)
``ToolSpec``                        ``{"name", "description", "input_schema"}``
``stop``                            ``stop_sequences``
``temperature``, ``top_p``          ``top_p`` when it is not 1.0, else ``temperature`` (newer
                                    models refuse both)
finish ``end_turn``/``stop_seq.``   ``stop``; ``max_tokens`` → ``length``; ``tool_use`` →
                                    ``tool_calls``
==================================  ==========================================================

Prompt caching: the shared prefix of a request (tools, then the leading system messages; see
:mod:`avm.llm.io.prefix`) is encoded once, and its last block carries
``cache_control: {"type": "ephemeral"}`` so Anthropic caches it. The reply's
``cache_read_input_tokens`` and ``cache_creation_input_tokens`` arrive in
:class:`~avm.llm.types.Usage` as ``cached_tokens`` and ``cache_write_tokens``; ``tokens_in``
counts every prompt token, cached or not.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Final

import msgspec

from avm.errors import ConfigError, ModelError, ModelTimeout, ProviderUnavailable, RateLimited
from avm.llm.io.prefix import PREFIXES, SharedPrefix
from avm.llm.io.streams import ReplyStream
from avm.llm.io.transport import ModelTransport, batch_custom_id
from avm.llm.types import Message, ModelReply, ModelRequest, ToolCall, Usage

__all__ = [
    "ANTHROPIC_VERSION",
    "DEFAULT_BASE_URL",
    "AnthropicProvider",
    "AnthropicStream",
    "anthropic_factory",
]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL: Final = "https://api.anthropic.com"
ANTHROPIC_VERSION: Final = "2023-06-01"
# Anthropic's SDKs retry these; 529 is "overloaded".
_RETRY_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504, 529})
_FINISH: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}
MAX_BATCH_REQUESTS: Final = 100_000


# --- request wire format ---------------------------------------------------------------------


class _CacheControl(msgspec.Struct):
    type: str = "ephemeral"


class _TextBlock(msgspec.Struct, tag="text", tag_field="type", omit_defaults=True):
    text: str
    cache_control: _CacheControl | None = None


class _ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: Any


class _ToolResultBlock(msgspec.Struct, tag="tool_result", tag_field="type"):
    tool_use_id: str
    content: str


class _WireMessage(msgspec.Struct):
    role: str
    content: str | list[Any]


class _WireTool(msgspec.Struct, omit_defaults=True):
    name: str
    input_schema: dict[str, Any]
    description: str = ""
    cache_control: _CacheControl | None = None


class _WireRequest(msgspec.Struct, omit_defaults=True):
    model: str
    max_tokens: int
    messages: list[_WireMessage]
    # list of _TextBlock / msgspec.Raw (the shared prefix's system blocks, encoded once)
    system: list[Any] | None = None
    # list[_WireTool], or the shared prefix's tools already encoded as msgspec.Raw
    tools: list[_WireTool] | msgspec.Raw | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False


class _BatchItem(msgspec.Struct):
    custom_id: str
    params: msgspec.Raw


class _BatchCreate(msgspec.Struct):
    requests: list[_BatchItem]


# --- reply wire format -----------------------------------------------------------------------


_NO_RAW: Final = msgspec.Raw(b"")


class _RBlock(msgspec.Struct):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    # Raw (msgspec cannot put Raw in a union with None): the tool input's JSON text, as is.
    input: msgspec.Raw = _NO_RAW


class _RUsage(msgspec.Struct):
    input_tokens: int | None = 0
    output_tokens: int | None = 0
    cache_creation_input_tokens: int | None = 0
    cache_read_input_tokens: int | None = 0


class _RMessage(msgspec.Struct):
    content: list[_RBlock] = []
    model: str | None = None
    stop_reason: str | None = None
    usage: _RUsage | None = None


class _RStreamBlock(msgspec.Struct):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None


class _RDelta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None


class _RErrorDetail(msgspec.Struct):
    type: str | None = None
    message: str | None = None


class _REvent(msgspec.Struct):
    type: str
    index: int = 0
    message: _RMessage | None = None
    content_block: _RStreamBlock | None = None
    delta: _RDelta | None = None
    usage: _RUsage | None = None
    error: _RErrorDetail | None = None


class _RBatch(msgspec.Struct):
    id: str
    processing_status: str
    results_url: str | None = None


class _RBatchError(msgspec.Struct):
    error: _RErrorDetail | None = None


class _RBatchResult(msgspec.Struct):
    type: str
    message: msgspec.Raw = _NO_RAW
    error: _RBatchError | None = None


class _RBatchLine(msgspec.Struct):
    custom_id: str
    result: _RBatchResult


_ENCODER: Final = msgspec.json.Encoder()
_MESSAGE_DECODER: Final = msgspec.json.Decoder(_RMessage)
_EVENT_DECODER: Final = msgspec.json.Decoder(_REvent)
_BATCH_DECODER: Final = msgspec.json.Decoder(_RBatch)
_BATCH_LINE_DECODER: Final = msgspec.json.Decoder(_RBatchLine)
_ANY_DECODER: Final = msgspec.json.Decoder()
_EPHEMERAL: Final = _CacheControl()


def _usage(wire: _RUsage | None) -> Usage:
    if wire is None:
        return Usage()
    read = wire.cache_read_input_tokens or 0
    written = wire.cache_creation_input_tokens or 0
    return Usage(
        tokens_in=(wire.input_tokens or 0) + read + written,
        tokens_out=wire.output_tokens or 0,
        cached_tokens=read,
        cache_write_tokens=written,
    )


def _tool_input(arguments: str) -> Any:
    """A tool call's JSON arguments as the object ``tool_use.input`` must be."""
    try:
        value = _ANY_DECODER.decode(arguments) if arguments else {}
    except msgspec.DecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"value": value}


def _encode_prefix(
    prefix: SharedPrefix, caching: bool
) -> tuple[list[msgspec.Raw], msgspec.Raw | None]:
    """System blocks and tools of the shared prefix; its last block marks the cache point."""
    mark = _EPHEMERAL if caching else None
    last = len(prefix.texts) - 1
    system = [
        msgspec.Raw(_ENCODER.encode(_TextBlock(text, mark if i == last else None)))
        for i, text in enumerate(prefix.texts)
    ]
    tools = None
    if prefix.tools:
        last_tool = len(prefix.tools) - 1
        tools = msgspec.Raw(
            _ENCODER.encode(
                [
                    _WireTool(
                        name=t.name,
                        description=t.description,
                        input_schema=t.parameters,
                        # Tools come before system in the cached prefix; mark the last tool
                        # only when there is no system block to carry the mark.
                        cache_control=mark if (i == last_tool and not system) else None,
                    )
                    for i, t in enumerate(prefix.tools)
                ]
            )
        )
    return system, tools


def _messages(messages: Sequence[Message]) -> tuple[list[_WireMessage], list[_TextBlock]]:
    """The conversation as Anthropic turns, and any system messages found in it."""
    turns: list[_WireMessage] = []
    system: list[_TextBlock] = []
    for message in messages:
        role = message.role
        if role == "system":
            system.append(_TextBlock(message.content))
        elif role == "user":
            turns.append(_WireMessage("user", message.content))
        elif role == "assistant":
            if message.tool_calls:
                blocks: list[Any] = [_TextBlock(message.content)] if message.content else []
                blocks.extend(
                    _ToolUseBlock(c.id, c.name, _tool_input(c.arguments))
                    for c in message.tool_calls
                )
                turns.append(_WireMessage("assistant", blocks))
            else:
                turns.append(_WireMessage("assistant", message.content))
        else:  # tool result
            block = _ToolResultBlock(message.tool_call_id or "", message.content)
            previous = turns[-1] if turns else None
            if (
                previous is not None
                and previous.role == "user"
                and isinstance(previous.content, list)
                and previous.content
                and isinstance(previous.content[-1], _ToolResultBlock)
            ):
                previous.content.append(block)
            else:
                turns.append(_WireMessage("user", [block]))
    return turns, system


class AnthropicProvider:
    """Answers :class:`ModelRequest` through Anthropic's ``/v1/messages``.

    Args:
        base_url: the API root without ``/v1`` (``https://api.anthropic.com``, or a fake
            server's ``base_url``).
        api_key: sent as ``x-api-key``; never logged or put in an error.
        timeout_s, max_connections, max_retries, backoff_base_s, backoff_max_s,
        retry_on_timeout: as for :class:`~avm.llm.io.transport.ModelTransport`.
        prompt_caching: mark the shared prefix with ``cache_control`` (on by default).
        headers: extra headers for every request (e.g. ``anthropic-beta``).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_connections: int = 256,
        max_retries: int = 2,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        retry_on_timeout: bool = False,
        prompt_caching: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.prompt_caching = prompt_caching
        self._transport = ModelTransport(
            self.base_url,
            timeout_s=timeout_s,
            max_connections=max_connections,
            max_retries=max_retries,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            retry_on_timeout=retry_on_timeout,
            retry_statuses=_RETRY_STATUSES,
            secret=api_key,
            name=repr(self),
        )
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if headers:
            self._headers.update(headers)
        self.set_api_key(api_key)
        self._where = "POST " + self._transport.url("/v1/messages")
        self._dialect = "anthropic+cache" if prompt_caching else "anthropic"

    def __repr__(self) -> str:
        return f"AnthropicProvider({self.base_url!r})"

    def set_api_key(self, api_key: str | None) -> None:
        """Authenticate with ``api_key`` from the next request on (None: send no key)."""
        if api_key:
            self._headers["x-api-key"] = api_key
            self._transport.add_secret(api_key)
        else:
            self._headers.pop("x-api-key", None)
        self._messages_head = self._transport.head("POST", "/v1/messages", self._headers)

    # --- public API --------------------------------------------------------------------------

    async def complete(self, request: ModelRequest) -> ModelReply:
        """Answer one request; raises only :class:`avm.errors.ModelError` subclasses."""
        writer = functools.partial(_ENCODER.encode_into, self._wire(request, stream=False))
        response = await self._transport.call(
            self._messages_head, writer, where=self._where, model=request.model
        )
        return self._decode(response.body, request.model, self._where)

    def stream(self, request: ModelRequest) -> AnthropicStream:
        """Stream one request's reply as text deltas (see :class:`AnthropicStream`)."""
        return AnthropicStream(self, request)

    async def run_batch(
        self, requests: Sequence[ModelRequest], *, poll_s: float = 30.0
    ) -> list[ModelReply | ModelError]:
        """Answer ``requests`` through Message Batches, in order.

        Creates one batch, polls it every ``poll_s`` seconds until its processing has ended,
        reads its results, and returns one reply or one :class:`ModelError` per request.
        Raises only when the batch could not be created or polled at all.
        """
        if not requests:
            return []
        if len(requests) > MAX_BATCH_REQUESTS:
            raise ValueError(f"a batch holds at most {MAX_BATCH_REQUESTS} requests")
        model = requests[0].model
        body = _ENCODER.encode(
            _BatchCreate(
                [
                    _BatchItem(custom_id=batch_custom_id(i), params=msgspec.Raw(self.encode(r)))
                    for i, r in enumerate(requests)
                ]
            )
        )
        transport = self._transport
        call = functools.partial(
            transport.call_json, headers=self._headers, model=model, decoder=_BATCH_DECODER
        )
        batch = await call("POST", "/v1/messages/batches", body)
        logger.debug("%s: batch %s of %d requests created", self.base_url, batch.id, len(requests))
        while batch.processing_status != "ended":
            await asyncio.sleep(poll_s)
            batch = await call("GET", f"/v1/messages/batches/{batch.id}", b"")
        results: dict[int, ModelReply | ModelError] = {}
        if batch.results_url:
            content = await self._results(batch.results_url, model)
            answer = functools.partial(self._answer, batch.id)
            results = transport.read_batch_results(content, _BATCH_LINE_DECODER, requests, answer)
        return transport.batch_replies(
            requests, results, batch_id=batch.id, missing="no result in the batch"
        )

    async def aclose(self) -> None:
        """Close the connection pool; the provider cannot be used afterwards."""
        await self._transport.aclose()

    # --- encoding ----------------------------------------------------------------------------

    def encode(self, request: ModelRequest, *, stream: bool = False) -> bytes:
        """The JSON body of ``request`` for ``/v1/messages``."""
        return _ENCODER.encode(self._wire(request, stream=stream))

    def _wire(self, request: ModelRequest, *, stream: bool) -> _WireRequest:
        prefix = PREFIXES.of(request)
        tools: list[_WireTool] | msgspec.Raw | None = None
        system: list[Any] = []
        messages: Sequence[Message] = request.messages
        if prefix is not None:
            caching = self.prompt_caching
            shared, tools = prefix.encoded(self._dialect, lambda p: _encode_prefix(p, caching))
            system.extend(shared)
            messages = messages[prefix.count :]
        turns, extra_system = _messages(messages)
        system.extend(extra_system)
        return _WireRequest(
            model=request.model,
            max_tokens=request.max_tokens,
            messages=turns,
            system=system or None,
            tools=tools,
            # Newer models refuse temperature and top_p together: a request that narrows top_p
            # samples by it alone, any other by temperature.
            temperature=request.temperature if request.top_p == 1.0 else None,
            top_p=request.top_p if request.top_p != 1.0 else None,
            stop_sequences=list(request.stop) if request.stop else None,
            stream=stream,
        )

    def _decode(self, payload: bytes, model: str, where: str) -> ModelReply:
        message = self._transport.decode(_MESSAGE_DECODER, payload, where=where, model=model)
        text: list[str] = []
        calls: list[ToolCall] = []
        for block in message.content:
            if block.type == "text" and block.text:
                text.append(block.text)
            elif block.type == "tool_use":
                arguments = bytes(block.input).decode() if len(block.input) else "{}"
                calls.append(
                    ToolCall(id=block.id or "", name=block.name or "", arguments=arguments)
                )
        stop = message.stop_reason or "end_turn"
        return ModelReply(
            text="".join(text),
            model=message.model or model,
            usage=_usage(message.usage),
            tool_calls=tuple(calls),
            finish_reason=_FINISH.get(stop, stop),
        )

    # --- batches -----------------------------------------------------------------------------

    async def _results(self, url: str, model: str) -> bytes:
        transport = self._transport
        target = transport.target_of(url)
        if target is None:
            raise ModelError(
                transport.describe(f"GET {url}", model, "batch results are on another server")
            )
        head = transport.head("GET", target, self._headers, absolute=True)
        response = await transport.call(
            head, b"", where=f"GET {url}", model=model, max_body=1 << 30
        )
        return response.body

    def _answer(self, batch_id: str, line: _RBatchLine, model: str) -> ModelReply:
        """The reply one line of a batch's results holds, or the error it tells."""
        where = f"batch {batch_id} request {line.custom_id}"
        result = line.result
        if result.type == "succeeded" and len(result.message):
            return self._decode(bytes(result.message), model, where)
        detail = result.type
        kind = None
        if result.error is not None and result.error.error is not None:
            kind = result.error.error.type
            detail = f"{kind}: {self._transport.mask(result.error.error.message or '')}"
        raise _error_for(kind, self._transport.describe(where, model, detail))


def _error_for(kind: str | None, message: str) -> ModelError:
    """An Anthropic error type (``rate_limit_error``, ``overloaded_error``...) as avm.errors."""
    if kind == "rate_limit_error":
        return RateLimited(message)
    if kind in ("overloaded_error", "api_error"):
        return ProviderUnavailable(message)
    if kind == "timeout_error":
        return ModelTimeout(message)
    return ModelError(message)


class AnthropicStream(ReplyStream):
    """The text deltas of one streamed Messages reply, then the whole reply in :attr:`reply`.

    Iterate it once. Errors are translated exactly as for :meth:`AnthropicProvider.complete`;
    an ``error`` event mid-stream (``overloaded_error``, say) is raised as its avm.errors kind.
    """

    def __init__(self, provider: AnthropicProvider, request: ModelRequest) -> None:
        super().__init__()
        self._provider = provider
        self._request = request

    async def _run(self) -> AsyncGenerator[str, None]:
        provider = self._provider
        transport = provider._transport
        where = provider._where
        model = self._request.model
        writer = functools.partial(_ENCODER.encode_into, provider._wire(self._request, stream=True))
        stream = await transport.open_stream(
            provider._messages_head, writer, where=where, model=model
        )
        text: list[str] = []
        blocks: dict[int, list[str]] = {}  # tool_use index -> [id, name, json parts...]
        usage_in = _RUsage()
        tokens_out = 0
        stop: str | None = None
        reply_model = model
        ended = False
        with transport.reading(stream, where=where, model=model):
            async for line in stream.lines():
                if not line.startswith(b"data:"):
                    continue  # "event:" names repeat the data's type; blank lines separate
                data = line[5:].strip()
                event = transport.decode(
                    _EVENT_DECODER, data, where=where, model=model, what="stream event"
                )
                kind = event.type
                if kind == "content_block_delta" and event.delta is not None:
                    delta = event.delta
                    if delta.type == "text_delta" and delta.text:
                        text.append(delta.text)
                        yield delta.text
                    elif delta.type == "input_json_delta" and delta.partial_json:
                        parts = blocks.get(event.index)
                        if parts is not None:
                            parts.append(delta.partial_json)
                elif kind == "content_block_start" and event.content_block is not None:
                    block = event.content_block
                    if block.type == "tool_use":
                        blocks[event.index] = [block.id or "", block.name or ""]
                    elif block.type == "text" and block.text:
                        text.append(block.text)
                        yield block.text
                elif kind == "message_start" and event.message is not None:
                    if event.message.model:
                        reply_model = event.message.model
                    if event.message.usage is not None:
                        usage_in = event.message.usage
                        tokens_out = usage_in.output_tokens or 0
                elif kind == "message_delta":
                    if event.delta is not None and event.delta.stop_reason:
                        stop = event.delta.stop_reason
                    if event.usage is not None and event.usage.output_tokens is not None:
                        tokens_out = event.usage.output_tokens
                elif kind == "message_stop":
                    ended = True
                    break
                elif kind == "error":
                    error = event.error or _RErrorDetail()
                    message = transport.describe(
                        where,
                        model,
                        f"stream error {error.type}: {transport.mask(error.message or '')}",
                    )
                    raise _error_for(error.type, message)
            if ended:
                await stream.read()  # to the end of the body, so the connection is reused
        if not ended:
            raise ProviderUnavailable(transport.describe(where, model, "stream ended early"))
        usage = _usage(usage_in)
        stop = stop or "end_turn"
        self.reply = ModelReply(
            text="".join(text),
            model=reply_model,
            usage=Usage(
                tokens_in=usage.tokens_in,
                tokens_out=tokens_out,
                cached_tokens=usage.cached_tokens,
                cache_write_tokens=usage.cache_write_tokens,
            ),
            tool_calls=tuple(
                ToolCall(id=parts[0], name=parts[1], arguments="".join(parts[2:]) or "{}")
                for _, parts in sorted(blocks.items())
            ),
            finish_reason=_FINISH.get(stop, stop),
        )


def anthropic_factory(config: Any) -> AnthropicProvider:
    """A provider for a :class:`~avm.config.ModelConfig` with ``provider="anthropic"``.

    ``base_url`` defaults to Anthropic's API and ``api_key_env`` to ``ANTHROPIC_API_KEY``.
    Register it with ``linker.add_factory("anthropic", anthropic_factory)``.
    """
    env = getattr(config, "api_key_env", None) or "ANTHROPIC_API_KEY"
    api_key = os.environ.get(env)
    base_url = getattr(config, "base_url", None) or DEFAULT_BASE_URL
    if api_key is None and base_url == DEFAULT_BASE_URL:
        raise ConfigError(
            f"model {getattr(config, 'model', '?')!r}: environment variable {env} is not set"
        )
    return AnthropicProvider(
        base_url,
        api_key=api_key,
        timeout_s=getattr(config, "timeout_s", 60.0),
        max_connections=getattr(config, "max_connections", 256),
    )
