"""What every fake model server on loopback shares: lifecycle, failures, bookkeeping, command line.

This module owns :class:`LoopbackServer`, the base of the fake OpenAI-compatible and Anthropic
servers. It binds a real aiohttp server on loopback and keeps what any such fake keeps: recorded
request bodies and per-path counters, the queue of injected failures (:meth:`fail_next`), the
scripted replies and the responder, reply latency, the timers that finish batches, and the
command line that serves one until killed. A subclass keeps only its protocol: its routes, how it
authenticates, validates and answers a request, its error bodies and its streaming format.

A handler refuses a request by raising :class:`Refusal` (see :meth:`LoopbackServer._refuse`);
the server answers with the refusal's response. So a handler reads top to bottom, without an
early-return check after every step that may refuse.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import collections
import contextlib
import itertools
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Final, NoReturn, Self, TypedDict, TypeVar

import msgspec
from aiohttp import web

from avm.testing.replies import FakeReply, FakeReplyLike, Responder, as_reply

__all__ = [
    "InjectedFailure",
    "LoopbackOptions",
    "LoopbackServer",
    "Refusal",
    "command_line",
    "serve_from_command_line",
    "server_options",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Echo replies quote at most this many characters of the last user message.
_ECHO_CHARS: Final = 200
# Largest request body accepted (batch input files run to many megabytes; OpenAI takes 200 MB,
# and aiohttp's own default cap is 1 MiB).
_MAX_BODY_BYTES: Final = 256 * 1024 * 1024

_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder()


class LoopbackOptions(TypedDict, total=False):
    """The options every fake server takes; see :class:`LoopbackServer` for their meaning."""

    host: str
    port: int
    latency_s: float
    responder: Responder | None
    script: Iterable[FakeReplyLike]
    api_key: str | None
    cache_min_tokens: int
    stream_chunk_chars: int
    record_limit: int | None
    batch_latency_s: float


@dataclass(slots=True)
class InjectedFailure:
    """A failure queued by :meth:`LoopbackServer.fail_next`, for its ``remaining`` requests."""

    status: int
    retry_after_s: float | None
    message: str | None
    body: bytes | None
    remaining: int = 1

    @property
    def text(self) -> str:
        """The error message the failure carries."""
        return self.message or f"Injected failure (HTTP {self.status})"


class Refusal(Exception):
    """Raised by a handler to answer at once with ``response`` (an error, as a rule)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


@web.middleware
async def _answer_refusals(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refusal as refusal:
        return refusal.response


class LoopbackServer(abc.ABC):
    """A fake model server on loopback: the protocol-neutral part.

    Use as ``async with Server(...) as server`` (or :meth:`start` / :meth:`close`). Every knob is
    a plain attribute that may be changed while the server runs (``server.latency_s = 2.0``).

    Args:
        host: interface to bind; loopback by default.
        port: TCP port; 0 picks a free one (read it back from :attr:`port` or :attr:`base_url`).
        latency_s: seconds every reply waits before answering (failures answer at once, as a
            real rate limiter does).
        responder: called with each decoded request body when no scripted reply is queued.
        script: replies served in order before falling back to ``responder`` or echo.
        api_key: when set, requests must carry it (each protocol in its own header) or get 401.
        cache_min_tokens: smallest prompt prefix that the simulated prompt cache stores.
        stream_chunk_chars: characters of text (or tool-call arguments) per streamed event.
        record_limit: how many request bodies :attr:`requests` keeps (the most recent); None
            keeps all. Counters are never capped.
        batch_latency_s: seconds from creating a batch until it is answered.
    """

    api_root: ClassVar[str] = ""
    """What :attr:`base_url` adds to ``http://host:port`` (OpenAI clients expect ``/v1``)."""
    default_failure_status: ClassVar[int] = 500
    """The status :meth:`fail_next` injects when none is named."""

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
        record_limit: int | None = 1000,
        batch_latency_s: float = 0.0,
    ) -> None:
        if stream_chunk_chars < 1:
            raise ValueError(f"stream_chunk_chars must be at least 1, got {stream_chunk_chars}")
        self.host = host
        self.latency_s = latency_s
        self.responder = responder
        self.api_key = api_key
        self.cache_min_tokens = cache_min_tokens
        self.stream_chunk_chars = stream_chunk_chars
        self.batch_latency_s = batch_latency_s

        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=record_limit)
        """Decoded request bodies of live replies, oldest first (capped by ``record_limit``)."""
        self.arrivals: collections.deque[float] = collections.deque(maxlen=record_limit)
        """``time.monotonic()`` of each live reply's arrival, matching :attr:`requests`."""
        self.batch_requests: list[dict[str, Any]] = []
        """Request bodies answered through batches, in the order they were answered."""
        self.request_count = 0
        """Every HTTP request received, on any path, including failed ones."""
        self.path_counts: collections.Counter[str] = collections.Counter()
        """Requests received per URL path."""
        self.credentials: collections.deque[str | None] = collections.deque(maxlen=record_limit)
        """The :attr:`AUTH_HEADER` each request received carried (None: none), oldest first."""

        self._requested_port = port
        self._port: int | None = None
        self._script: collections.deque[FakeReply] = collections.deque(as_reply(r) for r in script)
        self._failures: collections.deque[InjectedFailure] = collections.deque()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._timers: list[asyncio.TimerHandle] = []
        # What the simulated prompt cache holds: each protocol keys its prefixes its own way.
        self._cached_prefixes: set[Hashable] = set()

    # --- what a protocol supplies ------------------------------------------------------------

    @abc.abstractmethod
    def _add_routes(self, router: web.UrlDispatcher) -> None:
        """Register the protocol's handlers (every other path answers 404)."""

    #: The header a client authenticates with in the protocol.
    AUTH_HEADER: ClassVar[str]

    @abc.abstractmethod
    def _authenticate(self, request: web.Request) -> None:
        """Refuse (:meth:`_refuse`) a request without the right credentials or headers."""

    @abc.abstractmethod
    def _error_body(self, status: int, message: str) -> bytes:
        """The protocol's JSON error body for ``status``."""

    @abc.abstractmethod
    def _echo_text(self, content: object) -> str:
        """The plain text of a message's ``content``, as echo mode quotes it."""

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving; idempotent."""
        if self._runner is not None:
            return
        app = web.Application(client_max_size=_MAX_BODY_BYTES, middlewares=[_answer_refusals])
        self._add_routes(app.router)
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
        logger.debug("%s listening on %s", type(self).__name__, self.base_url)

    async def close(self) -> None:
        """Stop serving, drop unfinished batch timers and release the port; idempotent."""
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
        """The bound TCP port (only once started)."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started; use 'async with' or start()")
        return self._port

    @property
    def base_url(self) -> str:
        """The URL a client is given, e.g. ``http://127.0.0.1:54321`` plus :attr:`api_root`."""
        return f"http://{self.host}:{self.port}{self.api_root}"

    # --- control -----------------------------------------------------------------------------

    def script(self, *replies: FakeReplyLike) -> None:
        """Queue replies to serve, in order, before the responder or echo mode."""
        self._script.extend(as_reply(r) for r in replies)

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        message: str | None = None,
        body: bytes | None = None,
    ) -> None:
        """Make the next ``n`` replies (live, or lines of a batch) fail with ``status``.

        ``status`` defaults to :attr:`default_failure_status` (500 from OpenAI, 529 "overloaded"
        from Anthropic). A failure carries ``Retry-After`` when ``retry_after_s`` is given (as a
        real rate limiter does) and the protocol's error JSON with ``message``, unless ``body``
        replaces it with raw bytes (e.g. ``status=200, body=b"{oops"`` for a malformed reply).
        Calls queue up: ``fail_next(2, status=429)`` then ``fail_next(1)`` fails three requests.
        """
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        if n:
            status = self.default_failure_status if status is None else status
            self._failures.append(InjectedFailure(status, retry_after_s, message, body, n))

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
        self._cached_prefixes.clear()

    # --- request plumbing --------------------------------------------------------------------

    def _admit(self, request: web.Request) -> None:
        """Count a request and refuse it unless it authenticates."""
        self.request_count += 1
        self.path_counts[request.path] += 1
        self.credentials.append(request.headers.get(self.AUTH_HEADER))
        self._authenticate(request)

    def _error(self, status: int, message: str, retry_after_s: float | None = None) -> web.Response:
        return self._raw_error(status, self._error_body(status, message), retry_after_s)

    @staticmethod
    def _raw_error(status: int, body: bytes, retry_after_s: float | None) -> web.Response:
        headers = {"Retry-After": f"{retry_after_s:g}"} if retry_after_s is not None else None
        return web.Response(
            status=status, body=body, content_type="application/json", headers=headers
        )

    def _refuse(self, status: int, message: str) -> NoReturn:
        """Answer the request being handled with the protocol's error ``status``."""
        raise Refusal(self._error(status, message))

    async def _not_found(self, request: web.Request) -> web.Response:
        self.request_count += 1
        self.path_counts[request.path] += 1
        return self._error(404, f"Unknown path {request.method} {request.path}")

    async def _read_json(self, request: web.Request) -> dict[str, Any]:
        """The request's JSON object body; anything else is refused with 400."""
        try:
            body = _DECODER.decode(await request.read())
        except msgspec.DecodeError as exc:
            self._refuse(400, f"We could not parse the JSON body of your request: {exc}")
        if not isinstance(body, dict):
            self._refuse(400, "The request body must be a JSON object.")
        return body

    def _lookup(self, table: Mapping[str, _T], request: web.Request, key: str) -> _T:
        """The entry of ``table`` that the URL's ``{key}`` names; refused with 404 if none."""
        found = table.get(request.match_info[key])
        if found is None:
            self._refuse(404, f"No such object: {key} {request.match_info[key]!r}")
        return found

    @staticmethod
    def _json_response(payload: object) -> web.Response:
        return web.Response(body=_ENCODER.encode(payload), content_type="application/json")

    @staticmethod
    async def _event_stream(request: web.Request, events: list[bytes]) -> web.StreamResponse:
        """Answer with server-sent ``events``, already framed."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        # The events are built first and written in one go: a fake has no tokens to wait for,
        # and one write per response keeps the server cheap under benchmark load.
        await response.write(b"".join(events))
        await response.write_eof()
        return response

    # --- replies -----------------------------------------------------------------------------

    def _record(self, body: dict[str, Any]) -> None:
        """Note a validated live request, before its failure or reply is chosen."""
        self.requests.append(body)
        self.arrivals.append(time.monotonic())

    def _next_failure(self) -> InjectedFailure | None:
        """The next queued failure, if one is due (it is used up)."""
        if not self._failures:
            return None
        failure = self._failures[0]
        failure.remaining -= 1
        if failure.remaining <= 0:
            self._failures.popleft()
        return failure

    def _failure_body(self, failure: InjectedFailure) -> bytes:
        if failure.body is not None:
            return failure.body
        return self._error_body(failure.status, failure.text)

    def _failure_response(self, failure: InjectedFailure) -> web.Response:
        return self._raw_error(failure.status, self._failure_body(failure), failure.retry_after_s)

    def _next_reply(self, body: dict[str, Any]) -> FakeReply:
        """The scripted reply, else the responder's, else an echo of the last user message."""
        if self._script:
            return self._script.popleft()
        if self.responder is not None:
            return as_reply(self.responder(body))
        for message in reversed(body["messages"]):
            if isinstance(message, dict) and message.get("role") == "user":
                text = self._echo_text(message.get("content"))
                return FakeReply(text="echo: " + text[:_ECHO_CHARS])
        return FakeReply(text="echo: ")

    async def _wait_latency(self) -> None:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)

    def _after_batch_latency(self, callback: Callable[..., None], *args: object) -> None:
        """Run ``callback(*args)`` once :attr:`batch_latency_s` has passed (unless closed)."""
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(self.batch_latency_s, callback, *args))


# --- command line ----------------------------------------------------------------------------


def command_line(prog: str, description: str, *, port: int) -> argparse.ArgumentParser:
    """A parser with the options every fake server's command line takes."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per reply")
    parser.add_argument("--batch-latency", type=float, default=0.0, help="seconds per batch")
    parser.add_argument("--api-key", default=None, help="require this API key")
    parser.add_argument("--record-limit", type=int, default=0, help="request bodies to keep")
    parser.add_argument("--log-level", default="WARNING")
    return parser


def server_options(args: argparse.Namespace) -> LoopbackOptions:
    """The server options that :func:`command_line`'s arguments set."""
    return LoopbackOptions(
        host=args.host,
        port=args.port,
        latency_s=args.latency,
        batch_latency_s=args.batch_latency,
        api_key=args.api_key,
        record_limit=args.record_limit,
    )


def serve_from_command_line(server: LoopbackServer, args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM, printing the base URL once ready."""
    # This is a program entry point, so it (and only it) configures logging.
    logging.basicConfig(level=args.log_level.upper())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(server))


async def _serve(server: LoopbackServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with server:
        # One line on stdout, flushed, so a parent process can wait for readiness and parse it.
        print(server.base_url, flush=True)
        await stop.wait()
