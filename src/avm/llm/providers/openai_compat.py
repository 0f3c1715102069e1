"""A model provider for any OpenAI-compatible chat-completions endpoint, over aiohttp.

This module owns :class:`OpenAICompatProvider` (one pooled HTTP client per provider, request
encoding, reply decoding, retries with backoff) and :class:`ModelStream` (incremental text of a
streamed reply). It is the boundary where HTTP failures become :mod:`avm.errors`:

==============================================  ==============================================
what happened                                   what the caller gets
==============================================  ==============================================
429 until retries ran out                       :class:`~avm.errors.RateLimited`
no answer within ``timeout_s``                  :class:`~avm.errors.ModelTimeout`
5xx, connection refused or dropped              :class:`~avm.errors.ProviderUnavailable`
any other 4xx, malformed or unexpected reply    :class:`~avm.errors.ModelError`
==============================================  ==============================================

Nothing from aiohttp or msgspec escapes, and the API key never appears in an error message: the
server's own words are quoted (trimmed), with any echo of the key masked.

The per-call path is kept lean because the VM issues thousands of calls per second: the URL,
headers and timeouts are built once, requests are encoded straight from msgspec structs, and
replies are decoded into typed structs without an intermediate dict.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from types import TracebackType
from typing import Final, NoReturn, Self

import aiohttp
import msgspec
import yarl

from avm.errors import ModelError, ModelTimeout, ProviderUnavailable, RateLimited
from avm.llm.types import Message, ModelReply, ModelRequest, ToolCall, ToolSpec, Usage

__all__ = ["ModelStream", "OpenAICompatProvider"]

logger = logging.getLogger(__name__)

# Statuses that say "try again later" rather than "your request is wrong".
_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
# How much of a server's error text goes into an exception message.
_MAX_QUOTE_CHARS: Final = 300


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
    messages: list[Message | _WireMessage]
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str] | None = None
    tools: list[_WireTool] | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None


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


_ENCODER: Final = msgspec.json.Encoder()
_COMPLETION_DECODER: Final = msgspec.json.Decoder(_RCompletion)
_CHUNK_DECODER: Final = msgspec.json.Decoder(_RChunk)
_ERROR_DECODER: Final = msgspec.json.Decoder(_RErrorBody)


def _usage(wire: _RUsage | None) -> Usage:
    if wire is None:
        return Usage()
    details = wire.prompt_tokens_details
    return Usage(
        tokens_in=wire.prompt_tokens or 0,
        tokens_out=wire.completion_tokens or 0,
        cached_tokens=(details.cached_tokens or 0) if details is not None else 0,
    )


def _parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


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

    The HTTP session is created on first use inside the running event loop; :meth:`aclose`
    closes it.
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
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if max_retries < 0:
            raise ValueError(f"max_retries must not be negative, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_on_timeout = retry_on_timeout
        # A parsed URL, so aiohttp does not re-parse a string on every call.
        self._url = yarl.URL(self.base_url + "/chat/completions")
        self._where = str(self._url)
        self._api_key = api_key or None
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if headers:
            self._headers.update(headers)
        if self._api_key is not None:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # A stream may legitimately run for minutes; what must not stall is each read.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeout_s, sock_read=timeout_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def __repr__(self) -> str:
        # Deliberately without the key.
        return f"OpenAICompatProvider({self.base_url!r})"

    # --- public API --------------------------------------------------------------------------

    async def complete(self, request: ModelRequest) -> ModelReply:
        """Answer one request; raises only :class:`avm.errors.ModelError` subclasses."""
        body = self._encode(request, stream=False)
        response = await self._open(body, request.model, stream=False)
        try:
            payload = await response.read()
        except TimeoutError as exc:
            raise ModelTimeout(
                self._describe(request.model, "timed out reading the reply")
            ) from exc
        except aiohttp.ClientError as exc:
            raise ProviderUnavailable(
                self._describe(request.model, f"reply cut off: {type(exc).__name__}")
            ) from exc
        finally:
            response.release()
        return self._decode(payload, request.model)

    def stream(self, request: ModelRequest) -> ModelStream:
        """Stream one request's reply as text deltas.

        ``async for delta in provider.stream(request)`` yields the text as it arrives; once the
        iteration ends, the returned stream's :attr:`ModelStream.reply` holds the complete
        :class:`ModelReply` (text, tool calls, usage, finish reason). Use ``async with`` around
        it when the loop may stop early, so the connection is released at once. Retries apply
        only until the reply starts; a failure mid-stream is raised as is.
        """
        return ModelStream(self, request)

    async def aclose(self) -> None:
        """Close the connection pool; the provider cannot be used afterwards."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    # --- transport ---------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        session = self._session
        loop = asyncio.get_running_loop()
        if session is not None and self._loop is loop and not session.closed:
            return session
        if self._closed:
            raise ModelError(f"{self!r} was closed; create a new provider")
        # A session is bound to the loop it was made in; a provider reused from another loop
        # (one per test, say) gets a fresh one rather than a pool of dead connections.
        self._session = session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0),
            headers=self._headers,
            timeout=self._timeout,
            raise_for_status=False,
        )
        self._loop = loop
        return session

    async def _open(self, body: bytes, model: str, *, stream: bool) -> aiohttp.ClientResponse:
        """POST ``body`` with retries; return a 200 response whose body is not read yet."""
        session = self._client()
        timeout = self._stream_timeout if stream else self._timeout
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                response = await session.post(self._url, data=body, timeout=timeout)
            except TimeoutError as exc:
                if self.retry_on_timeout and attempt < self.max_retries:
                    await self._backoff(attempt, None, model, "timeout")
                    attempt += 1
                    continue
                raise ModelTimeout(
                    self._describe(model, f"no answer within {self.timeout_s:g} s", attempt)
                ) from exc
            except aiohttp.ClientConnectionError as exc:
                if attempt < self.max_retries:
                    await self._backoff(attempt, None, model, type(exc).__name__)
                    attempt += 1
                    continue
                raise ProviderUnavailable(
                    self._describe(model, f"cannot connect: {self._mask(str(exc))}", attempt)
                ) from exc
            except aiohttp.ClientError as exc:
                raise ModelError(
                    self._describe(model, f"request failed: {self._mask(str(exc))}", attempt)
                ) from exc

            status = response.status
            if status == 200:
                return response
            try:
                detail = await self._error_text(response)
            finally:
                response.release()
            retry_after = _parse_retry_after(response.headers)
            if (
                status in _RETRY_STATUSES
                and attempt < self.max_retries
                and (retry_after is None or retry_after <= self.backoff_max_s)
            ):
                await self._backoff(attempt, retry_after, model, f"HTTP {status}")
                attempt += 1
                continue
            self._raise_status(status, detail, model, attempt, retry_after)

    async def _backoff(
        self, attempt: int, retry_after: float | None, model: str, reason: str
    ) -> None:
        if retry_after is not None:
            # Honour the server's word, plus a little jitter so a crowd of agents that were
            # throttled together does not come back in the same millisecond.
            delay = retry_after * (1.0 + 0.1 * random.random())
        else:
            ceiling = min(self.backoff_max_s, self.backoff_base_s * (2.0**attempt))
            delay = ceiling * (0.5 + 0.5 * random.random())
        logger.debug(
            "%s model %r: %s, retry %d/%d in %.3f s",
            self._where,
            model,
            reason,
            attempt + 1,
            self.max_retries,
            delay,
        )
        await asyncio.sleep(delay)

    async def _error_text(self, response: aiohttp.ClientResponse) -> str:
        """What the server said in an error reply: its error message, else its raw text."""
        try:
            raw = await response.read()
        except (aiohttp.ClientError, TimeoutError):
            return "(no readable body)"
        try:
            parsed = _ERROR_DECODER.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            text = raw.decode(errors="replace").strip()
        else:
            error = parsed.error
            text = error if isinstance(error, str) else (error.message or "")
        return self._mask(text) or "(empty body)"

    def _raise_status(
        self, status: int, detail: str, model: str, attempt: int, retry_after: float | None
    ) -> NoReturn:
        message = self._describe(model, f"HTTP {status}: {detail}", attempt)
        if status == 429:
            raise RateLimited(message, retry_after_s=retry_after)
        if status >= 500:
            raise ProviderUnavailable(message)
        raise ModelError(message)

    # --- encoding ----------------------------------------------------------------------------

    def _encode(self, request: ModelRequest, *, stream: bool) -> bytes:
        wire = _WireRequest(
            model=request.model,
            messages=[_wire_message(m) for m in request.messages],
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=list(request.stop) if request.stop else None,
            tools=[_WireTool(function=t) for t in request.tools] if request.tools else None,
            stream=stream,
            stream_options=_StreamOptions() if stream else None,
        )
        return _ENCODER.encode(wire)

    def _decode(self, payload: bytes, model: str) -> ModelReply:
        try:
            completion = _COMPLETION_DECODER.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ModelError(
                self._describe(model, f"malformed reply ({exc}): {self._quote(payload)}")
            ) from exc
        if not completion.choices:
            raise ModelError(self._describe(model, f"reply has no choices: {self._quote(payload)}"))
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

    # --- messages ----------------------------------------------------------------------------

    def _describe(self, model: str, what: str, attempt: int = 0) -> str:
        tries = f" (after {attempt + 1} attempts)" if attempt else ""
        return f"POST {self._where} model {model!r}: {what}{tries}"

    def _mask(self, text: str) -> str:
        # Some providers quote the key they rejected; it must not travel on in our messages.
        if self._api_key is not None and self._api_key in text:
            text = text.replace(self._api_key, "***")
        if len(text) > _MAX_QUOTE_CHARS:
            text = text[:_MAX_QUOTE_CHARS] + "..."
        return text

    def _quote(self, payload: bytes) -> str:
        return self._mask(payload[: _MAX_QUOTE_CHARS * 4].decode(errors="replace"))


class ModelStream(AsyncIterator[str]):
    """The text deltas of one streamed reply, then the whole reply in :attr:`reply`.

    Iterate it once. Errors are translated exactly as for
    :meth:`OpenAICompatProvider.complete`.
    """

    def __init__(self, provider: OpenAICompatProvider, request: ModelRequest) -> None:
        self._provider = provider
        self._request = request
        self._agen = self._run()
        self.reply: ModelReply | None = None
        """The complete reply, set when the stream has ended normally; None before."""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        return await self._agen.__anext__()

    async def aclose(self) -> None:
        """Stop reading and release the connection."""
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
        model = self._request.model
        body = provider._encode(self._request, stream=True)
        response = await provider._open(body, model, stream=True)
        text: list[str] = []
        calls: dict[int, list[str]] = {}  # index -> [id, name, arguments...]
        usage = Usage()
        finish: str | None = None
        reply_model = model
        done = False
        try:
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue  # blank separators, ": keep-alive" comments, "event:" lines
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                try:
                    chunk = _CHUNK_DECODER.decode(data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise ModelError(
                        provider._describe(
                            model, f"malformed stream chunk ({exc}): {provider._quote(data)}"
                        )
                    ) from exc
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
        except TimeoutError as exc:
            raise ModelTimeout(
                provider._describe(model, f"stream stalled for {provider.timeout_s:g} s")
            ) from exc
        except aiohttp.ClientError as exc:
            raise ProviderUnavailable(
                provider._describe(model, f"stream cut off: {type(exc).__name__}")
            ) from exc
        except ValueError as exc:
            # aiohttp's line reader refuses a line beyond its buffer limit.
            raise ModelError(provider._describe(model, f"unreadable stream: {exc}")) from exc
        finally:
            response.release()
        if not done and finish is None:
            raise ProviderUnavailable(provider._describe(model, "stream ended before completion"))
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
