"""A fake Anthropic Messages API server for tests, examples and benchmarks.

This module owns :class:`FakeAnthropicServer`: a real aiohttp server on loopback that speaks
``POST /v1/messages`` (JSON, and server-sent events with ``"stream": true``) and Message Batches
(``POST /v1/messages/batches``, ``GET /v1/messages/batches/{id}``, ``.../results``,
``.../cancel``). It checks what the real API checks and a client is most likely to get wrong
(``x-api-key``, ``anthropic-version``, ``max_tokens``, roles, non-empty text blocks, that tool
results answer tool uses), simulates prompt caching at ``cache_control`` breakpoints (the first
request writes the prefix, later ones read it), and lets a test inject latency, 429s, 529s and
other errors. It records what it received.

Reply selection is the fake OpenAI server's: a queued failure (:meth:`fail_next`), the next
scripted reply (:meth:`script`), the ``responder`` callable, else echo mode (``"echo: "`` plus
the start of the last user text). Tokens are counted as there: about four UTF-8 bytes a token.

In-process::

    async with FakeAnthropicServer(latency_s=0.05) as server:
        provider = AnthropicProvider(server.base_url, api_key=server.api_key)

As a separate process, serving until killed; it prints its base URL when ready::

    python -m avm.testing.fake_anthropic --port 8001 --latency 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import itertools
import logging
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import msgspec
from aiohttp import web

from avm.testing.fake_openai import (
    FakeReply,
    FakeReplyLike,
    Responder,
    _as_reply,
    count_tokens,
)

__all__ = ["FakeAnthropicServer", "main"]

logger = logging.getLogger(__name__)

MESSAGES_PATH: Final = "/v1/messages"
BATCHES_PATH: Final = "/v1/messages/batches"

_ECHO_CHARS: Final = 200
_MESSAGE_OVERHEAD_TOKENS: Final = 4
_MAX_BODY_BYTES: Final = 256 * 1024 * 1024

_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder()


def _error_body(status: int, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "api_error")
    return _ENCODER.encode({"type": "error", "error": {"type": kind, "message": message}})


class _Invalid(Exception):
    """A request the real API would refuse with 400."""


@dataclass(slots=True)
class _Failure:
    status: int
    retry_after_s: float | None
    message: str | None
    remaining: int


@dataclass(slots=True)
class _Batch:
    id: str
    requests: list[dict[str, Any]]
    created_at: float
    status: str = "in_progress"
    results: bytes | None = None
    counts: dict[str, int] | None = None
    ended_at: float | None = None


def _text_of(content: object) -> str:
    """The text of a message ``content``: a string or a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if not isinstance(block, dict):
                continue
            if isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif block.get("type") == "tool_result":
                parts.append(_text_of(block.get("content")))
            elif block.get("type") == "tool_use":
                parts.append(str(block.get("name", "")))
                parts.append(_ENCODER.encode(block.get("input", {})).decode())
        return "".join(parts)
    return ""


def _blocks(content: object) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []


class FakeAnthropicServer:
    """An Anthropic Messages API server on loopback.

    Use as ``async with FakeAnthropicServer(...) as server``. Knobs are plain attributes that
    may change while it runs.

    Args:
        host, port: where to listen (port 0 picks a free one).
        latency_s: seconds every message waits before answering.
        responder: called with each decoded request body when no scripted reply is queued.
        script: replies served in order before ``responder`` or echo.
        api_key: when set, requests must carry ``x-api-key: <api_key>`` or get 401.
        cache_min_tokens: smallest prefix that prompt caching stores (Anthropic: 1024-4096,
            by model).
        stream_chunk_chars: characters of text (or tool input JSON) per streamed delta.
        batch_latency_s: seconds from creating a batch until its processing ends.
        record_limit: request bodies kept in :attr:`requests` (None keeps all).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        responder: Responder | None = None,
        script: Iterable[FakeReplyLike] = (),
        api_key: str | None = None,
        cache_min_tokens: int = 1024,
        stream_chunk_chars: int = 16,
        batch_latency_s: float = 0.0,
        record_limit: int | None = 1000,
    ) -> None:
        self.host = host
        self.latency_s = latency_s
        self.responder = responder
        self.api_key = api_key
        self.cache_min_tokens = cache_min_tokens
        self.stream_chunk_chars = max(1, stream_chunk_chars)
        self.batch_latency_s = batch_latency_s
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=record_limit)
        """Decoded ``/v1/messages`` request bodies, oldest first."""
        self.arrivals: collections.deque[float] = collections.deque(maxlen=record_limit)
        """``time.monotonic()`` of each message request's arrival."""
        self.batch_requests: list[dict[str, Any]] = []
        """``params`` of every batch request answered, in order."""
        self.path_counts: collections.Counter[str] = collections.Counter()
        self.batches: dict[str, _Batch] = {}
        self._requested_port = port
        self._port: int | None = None
        self._script: collections.deque[FakeReply] = collections.deque(_as_reply(r) for r in script)
        self._failures: collections.deque[_Failure] = collections.deque()
        self._ids = itertools.count(1)
        self._cache: set[bytes] = set()
        self._runner: web.AppRunner | None = None
        self._timers: list[asyncio.TimerHandle] = []

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_post(MESSAGES_PATH, self._messages)
        app.router.add_post(BATCHES_PATH, self._create_batch)
        app.router.add_get(BATCHES_PATH + "/{batch_id}", self._get_batch)
        app.router.add_get(BATCHES_PATH + "/{batch_id}/results", self._batch_results)
        app.router.add_post(BATCHES_PATH + "/{batch_id}/cancel", self._cancel_batch)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, handler_cancellation=True
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

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
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
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeAnthropicServer is not started; use 'async with' or start()")
        return self._port

    @property
    def base_url(self) -> str:
        """The API root, e.g. ``http://127.0.0.1:54321`` (paths start with ``/v1``)."""
        return f"http://{self.host}:{self.port}"

    # --- control -----------------------------------------------------------------------------

    def script(self, *replies: FakeReplyLike) -> None:
        """Queue replies to serve, in order, before the responder or echo mode."""
        self._script.extend(_as_reply(r) for r in replies)

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 529,
        retry_after_s: float | None = None,
        message: str | None = None,
    ) -> None:
        """Make the next ``n`` messages (live or batch lines) fail with ``status``."""
        if n:
            self._failures.append(_Failure(status, retry_after_s, message, n))

    @property
    def message_count(self) -> int:
        """How many ``/v1/messages`` requests arrived (failed ones included)."""
        return self.path_counts[MESSAGES_PATH]

    def reset(self) -> None:
        self.requests.clear()
        self.arrivals.clear()
        self.batch_requests.clear()
        self.path_counts.clear()
        self._failures.clear()
        self._script.clear()
        self._cache.clear()

    # --- handlers ----------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, message: str, retry_after_s: float | None = None) -> web.Response:
        headers = {"Retry-After": f"{retry_after_s:g}"} if retry_after_s is not None else None
        return web.Response(
            status=status,
            body=_error_body(status, message),
            content_type="application/json",
            headers=headers,
        )

    def _refused(self, request: web.Request) -> web.Response | None:
        self.path_counts[request.path] += 1
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            given = request.headers.get("x-api-key", "")
            return self._error(401, f"invalid x-api-key: {given}")
        if not request.headers.get("anthropic-version"):
            return self._error(400, "anthropic-version: header is required")
        return None

    async def _not_found(self, request: web.Request) -> web.Response:
        self.path_counts[request.path] += 1
        return self._error(404, f"Not found: {request.method} {request.path}")

    def _next_failure(self) -> _Failure | None:
        if not self._failures:
            return None
        failure = self._failures[0]
        failure.remaining -= 1
        if failure.remaining <= 0:
            self._failures.popleft()
        return failure

    async def _read_json(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = _DECODER.decode(await request.read())
        except msgspec.DecodeError as exc:
            return self._error(400, f"invalid JSON body: {exc}")
        if not isinstance(body, dict):
            return self._error(400, "the body must be a JSON object")
        return body

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        refused = self._refused(request)
        if refused is not None:
            return refused
        body = await self._read_json(request)
        if isinstance(body, web.Response):
            return body
        try:
            self._validate(body)
        except _Invalid as exc:
            return self._error(400, str(exc))
        self.requests.append(body)
        self.arrivals.append(time.monotonic())
        failure = self._next_failure()
        if failure is not None:
            text = failure.message or f"Injected failure (HTTP {failure.status})"
            return self._error(failure.status, text, failure.retry_after_s)
        reply = self._next_reply(body)
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        answer = self._answer(body, reply)
        if body.get("stream") is True:
            return await self._stream(request, answer)
        return web.Response(body=_ENCODER.encode(answer), content_type="application/json")

    # --- batches -----------------------------------------------------------------------------

    async def _create_batch(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        body = await self._read_json(request)
        if isinstance(body, web.Response):
            return body
        items = body.get("requests")
        if not isinstance(items, list) or not items:
            return self._error(400, "requests: a non-empty list is required")
        seen: set[str] = set()
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("params"), dict):
                return self._error(400, f"requests.{i}: 'custom_id' and 'params' are required")
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or custom_id in seen:
                return self._error(400, f"requests.{i}.custom_id: missing or duplicated")
            seen.add(custom_id)
            if item["params"].get("stream"):
                return self._error(400, f"requests.{i}.params.stream: not allowed in a batch")
        batch = _Batch(f"msgbatch_{next(self._ids):012x}", items, time.time())
        self.batches[batch.id] = batch
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(self.batch_latency_s, self._finish_batch, batch.id))
        return self._batch_response(request, batch)

    def _batch_object(self, request: web.Request, batch: _Batch) -> dict[str, Any]:
        counts = batch.counts or {
            "processing": len(batch.requests),
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        }
        results_url = None
        if batch.results is not None:
            results_url = f"{self.base_url}{BATCHES_PATH}/{batch.id}/results"
        created = batch.created_at
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.status,
            "request_counts": counts,
            "created_at": _iso(created),
            "expires_at": _iso(created + 86400),
            "ended_at": _iso(batch.ended_at) if batch.ended_at else None,
            "cancel_initiated_at": None,
            "archived_at": None,
            "results_url": results_url,
        }

    def _batch_response(self, request: web.Request, batch: _Batch) -> web.Response:
        return web.Response(
            body=_ENCODER.encode(self._batch_object(request, batch)),
            content_type="application/json",
        )

    def _find_batch(self, request: web.Request) -> _Batch | web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return self._error(404, f"batch {request.match_info['batch_id']} not found")
        return batch

    async def _get_batch(self, request: web.Request) -> web.Response:
        found = self._find_batch(request)
        if isinstance(found, web.Response):
            return found
        return self._batch_response(request, found)

    async def _batch_results(self, request: web.Request) -> web.Response:
        found = self._find_batch(request)
        if isinstance(found, web.Response):
            return found
        if found.results is None:
            return self._error(400, f"batch {found.id} is still in progress")
        return web.Response(body=found.results, content_type="application/binary")

    async def _cancel_batch(self, request: web.Request) -> web.Response:
        found = self._find_batch(request)
        if isinstance(found, web.Response):
            return found
        if found.status == "in_progress":
            found.status = "canceling"
        return self._batch_response(request, found)

    def _finish_batch(self, batch_id: str) -> None:
        batch = self.batches[batch_id]
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        lines: list[bytes] = []
        canceled = batch.status == "canceling"
        for item in batch.requests:
            custom_id = item["custom_id"]
            params = item["params"]
            if canceled:
                result: dict[str, Any] = {"type": "canceled"}
                counts["canceled"] += 1
            else:
                result = self._batch_result(params)
                counts["succeeded" if result["type"] == "succeeded" else "errored"] += 1
            lines.append(_ENCODER.encode({"custom_id": custom_id, "result": result}))
        batch.results = b"\n".join(lines) + b"\n"
        batch.counts = counts
        batch.status = "ended"
        batch.ended_at = time.time()

    def _batch_result(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            self._validate(params)
        except _Invalid as exc:
            error = {"type": "invalid_request_error", "message": str(exc)}
            return {"type": "errored", "error": {"type": "error", "error": error}}
        self.batch_requests.append(params)
        failure = self._next_failure()
        if failure is not None:
            kind = _ERROR_TYPES.get(failure.status, "api_error")
            text = failure.message or f"Injected failure (HTTP {failure.status})"
            error = {"type": kind, "message": text}
            return {"type": "errored", "error": {"type": "error", "error": error}}
        answer = self._answer(params, self._next_reply(params))
        return {"type": "succeeded", "message": answer}

    # --- replies -----------------------------------------------------------------------------

    @staticmethod
    def _validate(body: dict[str, Any]) -> None:
        if not isinstance(body.get("model"), str):
            raise _Invalid("model: Field required")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise _Invalid("max_tokens: Field required (a positive integer)")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _Invalid("messages: at least one message is required")
        system = body.get("system")
        if system is not None and not isinstance(system, (str, list)):
            raise _Invalid("system: must be a string or a list of text blocks")
        if body.get("temperature") is not None and body.get("top_p") is not None:
            raise _Invalid("temperature and top_p cannot both be specified for this model")
        tool_uses: set[str] = set()
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
                raise _Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            for block in _blocks(message.get("content")):
                kind = block.get("type")
                if kind == "text" and not block.get("text"):
                    raise _Invalid(f"messages.{i}: text content blocks must be non-empty")
                if kind == "tool_use":
                    tool_uses.add(str(block.get("id")))
                if kind == "tool_result" and block.get("tool_use_id") not in tool_uses:
                    raise _Invalid(
                        f"messages.{i}: unexpected tool_use_id found in tool_result blocks"
                    )
        for j, tool in enumerate(body.get("tools") or []):
            if not isinstance(tool, dict) or not isinstance(tool.get("input_schema"), dict):
                raise _Invalid(f"tools.{j}.input_schema: Field required")

    def _next_reply(self, body: dict[str, Any]) -> FakeReply:
        if self._script:
            return self._script.popleft()
        if self.responder is not None:
            return _as_reply(self.responder(body))
        for message in reversed(body["messages"]):
            if message.get("role") == "user":
                return FakeReply(text="echo: " + _text_of(message.get("content"))[:_ECHO_CHARS])
        return FakeReply(text="echo: ")

    def _prompt(self, body: dict[str, Any]) -> tuple[int, int, int]:
        """Input, cache-write and cache-read tokens, with caching at ``cache_control`` marks."""
        units: list[tuple[int, bool, bytes]] = []  # tokens, marked, content
        for tool in body.get("tools") or []:
            encoded = _ENCODER.encode(tool)
            units.append((count_tokens(encoded.decode()), "cache_control" in tool, encoded))
        system = body.get("system")
        for block in _blocks(system):
            text = str(block.get("text", ""))
            units.append((count_tokens(text), "cache_control" in block, text.encode()))
        for message in body["messages"]:
            blocks = _blocks(message.get("content"))
            text = _text_of(message.get("content"))
            marked = any("cache_control" in b for b in blocks)
            units.append((_MESSAGE_OVERHEAD_TOKENS + count_tokens(text), marked, text.encode()))
        total = sum(u[0] for u in units)
        # The cached prefix ends at the last marked unit.
        last = max((i for i, u in enumerate(units) if u[1]), default=-1)
        if last < 0:
            return total, 0, 0
        prefix_tokens = sum(u[0] for u in units[: last + 1])
        if prefix_tokens < self.cache_min_tokens:
            return total, 0, 0
        digest = hashlib.blake2b(b"\0".join(u[2] for u in units[: last + 1])).digest()
        if digest in self._cache:
            return total - prefix_tokens, 0, prefix_tokens
        self._cache.add(digest)
        return total - prefix_tokens, prefix_tokens, 0

    def _answer(self, body: dict[str, Any], reply: FakeReply) -> dict[str, Any]:
        text = reply.text
        stop = "tool_use" if reply.tool_calls else "end_turn"
        if reply.finish_reason is not None:
            stop = reply.finish_reason
        stop_sequence = None
        for sequence in body.get("stop_sequences") or []:
            cut = text.find(sequence) if isinstance(sequence, str) and sequence else -1
            if cut >= 0:
                text, stop, stop_sequence = text[:cut], "stop_sequence", sequence
        limit = body["max_tokens"]
        if count_tokens(text) > limit:
            text = text.encode()[: limit * 4].decode(errors="ignore")
            stop = "max_tokens"
        content: list[dict[str, Any]] = []
        if text or not reply.tool_calls:
            content.append({"type": "text", "text": text})
        output = count_tokens(text)
        for call in reply.tool_calls:
            arguments = call.arguments_json()
            content.append(
                {
                    "type": "tool_use",
                    "id": call.id or f"toolu_{next(self._ids):012x}",
                    "name": call.name,
                    "input": _DECODER.decode(arguments),
                }
            )
            output += count_tokens(call.name) + count_tokens(arguments)
        tokens_in, written, read = self._prompt(body)
        return {
            "id": f"msg_{next(self._ids):012x}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop,
            "stop_sequence": stop_sequence,
            "usage": {
                "input_tokens": tokens_in,
                "output_tokens": output,
                "cache_creation_input_tokens": written,
                "cache_read_input_tokens": read,
            },
        }

    async def _stream(self, request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)

        def event(kind: str, data: dict[str, Any]) -> bytes:
            return b"event: %s\ndata: %s\n\n" % (kind.encode(), _ENCODER.encode(data))

        usage = dict(message["usage"])
        final_output = usage["output_tokens"]
        usage["output_tokens"] = 1
        start = dict(message, content=[], stop_reason=None, stop_sequence=None, usage=usage)
        parts = [event("message_start", {"type": "message_start", "message": start})]
        step = self.stream_chunk_chars
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                parts.append(
                    event(
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {"type": "text", "text": ""},
                        },
                    )
                )
                text = block["text"]
                for i in range(0, len(text), step):
                    delta = {"type": "text_delta", "text": text[i : i + step]}
                    parts.append(
                        event(
                            "content_block_delta",
                            {"type": "content_block_delta", "index": index, "delta": delta},
                        )
                    )
            else:
                start_block = {"type": "tool_use", "id": block["id"], "name": block["name"]}
                start_block["input"] = {}
                parts.append(
                    event(
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": start_block,
                        },
                    )
                )
                arguments = _ENCODER.encode(block["input"]).decode()
                for i in range(0, len(arguments), step):
                    delta = {"type": "input_json_delta", "partial_json": arguments[i : i + step]}
                    parts.append(
                        event(
                            "content_block_delta",
                            {"type": "content_block_delta", "index": index, "delta": delta},
                        )
                    )
            parts.append(
                event("content_block_stop", {"type": "content_block_stop", "index": index})
            )
            if index == 0:
                parts.append(event("ping", {"type": "ping"}))
        parts.append(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": message["stop_reason"],
                        "stop_sequence": message["stop_sequence"],
                    },
                    "usage": {"output_tokens": final_output},
                },
            )
        )
        parts.append(event("message_stop", {"type": "message_stop"}))
        await response.write(b"".join(parts))
        await response.write_eof()
        return response


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


# --- command line ----------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m avm.testing.fake_anthropic",
        description="Serve a fake Anthropic Messages API until killed; prints the base URL.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per message")
    parser.add_argument("--batch-latency", type=float, default=0.0, help="seconds per batch")
    parser.add_argument("--api-key", default=None, help="require this x-api-key")
    parser.add_argument("--record-limit", type=int, default=0, help="request bodies to keep")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    server = FakeAnthropicServer(
        host=args.host,
        port=args.port,
        latency_s=args.latency,
        api_key=args.api_key,
        batch_latency_s=args.batch_latency,
        record_limit=args.record_limit,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with server:
        print(server.base_url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Run the fake server from the command line until SIGINT or SIGTERM."""
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
