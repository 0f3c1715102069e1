"""A fake Anthropic Messages API server for tests, examples and benchmarks.

This module owns :class:`FakeAnthropicServer`: a real aiohttp server on loopback that speaks
``POST /v1/messages`` (JSON, and server-sent events with ``"stream": true``) and Message Batches
(``POST /v1/messages/batches``, ``GET /v1/messages/batches/{id}``, ``.../results``,
``.../cancel``). It checks what the real API checks and a client is most likely to get wrong
(``x-api-key``, ``anthropic-version``, ``max_tokens``, roles, non-empty text blocks, that tool
results answer tool uses), simulates prompt caching at ``cache_control`` breakpoints (the first
request writes the prefix, later ones read it), and lets a test inject latency, 429s, 529s and
other errors. It records what it received.

Lifecycle, failure injection, recording and reply selection come from
:class:`~avm.testing.loopback_server.LoopbackServer`, shared with the fake OpenAI server: a queued
failure (:meth:`fail_next`), the next scripted reply (:meth:`script`), the ``responder``
callable, else echo mode (``"echo: "`` plus the start of the last user text). Tokens are counted
as there: about four UTF-8 bytes a token.

In-process::

    async with FakeAnthropicServer(latency_s=0.05) as server:
        provider = AnthropicProvider(server.base_url, api_key=server.api_key)

As a separate process, serving until killed; it prints its base URL when ready::

    python -m avm.testing.fake_anthropic --port 8001 --latency 0.05
"""

from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Unpack

import msgspec
from aiohttp import web

from avm.testing.loopback_server import (
    LoopbackOptions,
    LoopbackServer,
    command_line,
    serve_from_command_line,
    server_options,
)
from avm.testing.replies import FakeReply, count_tokens

__all__ = ["FakeAnthropicServer", "main"]

MESSAGES_PATH: Final = "/v1/messages"
BATCHES_PATH: Final = "/v1/messages/batches"

_MESSAGE_OVERHEAD_TOKENS: Final = 4

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


class FakeAnthropicServer(LoopbackServer):
    """An Anthropic Messages API server on loopback.

    Use as ``async with FakeAnthropicServer(...) as server``. Knobs are plain attributes that
    may change while it runs. It takes the options of :class:`LoopbackServer`; here ``api_key``
    is checked against the ``x-api-key`` header, ``cache_min_tokens`` is the smallest prefix
    that prompt caching stores (Anthropic: 1024-4096, by model), and :meth:`fail_next` injects
    529 "overloaded" unless told otherwise.
    """

    default_failure_status: ClassVar[int] = 529

    def __init__(self, **options: Unpack[LoopbackOptions]) -> None:
        super().__init__(**options)
        self.batches: dict[str, _Batch] = {}
        """Message batches by id."""

    @property
    def message_count(self) -> int:
        """How many ``/v1/messages`` requests arrived (failed ones included)."""
        return self.path_counts[MESSAGES_PATH]

    # --- protocol ----------------------------------------------------------------------------

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(MESSAGES_PATH, self._messages)
        router.add_post(BATCHES_PATH, self._create_batch)
        router.add_get(BATCHES_PATH + "/{batch_id}", self._get_batch)
        router.add_get(BATCHES_PATH + "/{batch_id}/results", self._batch_results)
        router.add_post(BATCHES_PATH + "/{batch_id}/cancel", self._cancel_batch)

    AUTH_HEADER = "x-api-key"

    def _authenticate(self, request: web.Request) -> None:
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            self._refuse(401, f"invalid x-api-key: {request.headers.get('x-api-key', '')}")
        if not request.headers.get("anthropic-version"):
            self._refuse(400, "anthropic-version: header is required")

    def _error_body(self, status: int, message: str) -> bytes:
        return _error_body(status, message)

    def _echo_text(self, content: object) -> str:
        return _text_of(content)

    # --- handlers ----------------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        self._admit(request)
        body = await self._read_json(request)
        try:
            self._validate(body)
        except _Invalid as exc:
            self._refuse(400, str(exc))
        self._record(body)
        failure = self._next_failure()
        if failure is not None:
            return self._failure_response(failure)
        reply = self._next_reply(body)
        await self._wait_latency()
        answer = self._answer(body, reply)
        if body.get("stream") is True:
            return await self._stream(request, answer)
        return self._json_response(answer)

    # --- batches -----------------------------------------------------------------------------

    async def _create_batch(self, request: web.Request) -> web.Response:
        self._admit(request)
        body = await self._read_json(request)
        items = body.get("requests")
        if not isinstance(items, list) or not items:
            self._refuse(400, "requests: a non-empty list is required")
        seen: set[str] = set()
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("params"), dict):
                self._refuse(400, f"requests.{i}: 'custom_id' and 'params' are required")
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or custom_id in seen:
                self._refuse(400, f"requests.{i}.custom_id: missing or duplicated")
            seen.add(custom_id)
            if item["params"].get("stream"):
                self._refuse(400, f"requests.{i}.params.stream: not allowed in a batch")
        batch = _Batch(f"msgbatch_{next(self._ids):012x}", items, time.time())
        self.batches[batch.id] = batch
        self._after_batch_latency(self._finish_batch, batch.id)
        return self._json_response(self._batch_object(batch))

    def _batch_object(self, batch: _Batch) -> dict[str, Any]:
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

    def _find_batch(self, request: web.Request) -> _Batch:
        self._admit(request)
        return self._lookup(self.batches, request, "batch_id")

    async def _get_batch(self, request: web.Request) -> web.Response:
        return self._json_response(self._batch_object(self._find_batch(request)))

    async def _batch_results(self, request: web.Request) -> web.Response:
        batch = self._find_batch(request)
        if batch.results is None:
            self._refuse(400, f"batch {batch.id} is still in progress")
        return web.Response(body=batch.results, content_type="application/binary")

    async def _cancel_batch(self, request: web.Request) -> web.Response:
        batch = self._find_batch(request)
        if batch.status == "in_progress":
            batch.status = "canceling"
        return self._json_response(self._batch_object(batch))

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
            error = {"type": kind, "message": failure.text}
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
        if digest in self._cached_prefixes:
            return total - prefix_tokens, 0, prefix_tokens
        self._cached_prefixes.add(digest)
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
        def event(kind: str, data: dict[str, Any]) -> bytes:
            return b"event: %s\ndata: %s\n\n" % (kind.encode(), _ENCODER.encode(data))

        usage = dict(message["usage"])
        final_output = usage["output_tokens"]
        usage["output_tokens"] = 1
        start = dict(message, content=[], stop_reason=None, stop_sequence=None, usage=usage)
        parts = [event("message_start", {"type": "message_start", "message": start})]
        step = self.stream_chunk_chars
        for index, block in enumerate(message["content"]):
            # A text block streams its text; a tool_use block streams its input as JSON text.
            opening: dict[str, Any]
            if block["type"] == "text":
                opening = {"type": "text", "text": ""}
                kind, key, payload = "text_delta", "text", block["text"]
            else:
                opening = {"type": "tool_use", "id": block["id"], "name": block["name"]}
                opening["input"] = {}
                kind, key = "input_json_delta", "partial_json"
                payload = _ENCODER.encode(block["input"]).decode()
            parts.append(
                event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": opening},
                )
            )
            for i in range(0, len(payload), step):
                delta = {"type": kind, key: payload[i : i + step]}
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
        return await self._event_stream(request, parts)


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


# --- command line ----------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_line(
        "python -m avm.testing.fake_anthropic",
        "Serve a fake Anthropic Messages API until killed; prints the base URL.",
        port=8001,
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the fake server from the command line until SIGINT or SIGTERM."""
    args = _parse_args(argv)
    serve_from_command_line(FakeAnthropicServer(**server_options(args)), args)


if __name__ == "__main__":
    main()
